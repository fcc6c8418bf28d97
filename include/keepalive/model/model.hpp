// Umbrella: the state-typed handles for devices, vectors and domains.
#pragma once

#include <keepalive/model/device.hpp>
#include <keepalive/model/domain.hpp>
#include <keepalive/model/outcome.hpp>
#include <keepalive/model/vector.hpp>
