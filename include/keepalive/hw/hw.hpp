// Bit-exact VT-d and PCI formats: everything in keepalive::hw.
#pragma once

#include <keepalive/hw/apic.hpp>
#include <keepalive/hw/bits.hpp>
#include <keepalive/hw/irte.hpp>
#include <keepalive/hw/msi.hpp>
#include <keepalive/hw/page_table.hpp>
#include <keepalive/hw/pci.hpp>
#include <keepalive/hw/phys_memory.hpp>
#include <keepalive/hw/posted_intr.hpp>
#include <keepalive/hw/root_context.hpp>
