// Umbrella: every keepalive state machine.
#pragma once

#include <keepalive/fsm/device.hpp>
#include <keepalive/fsm/domain.hpp>
#include <keepalive/fsm/table.hpp>
#include <keepalive/fsm/vector.hpp>
