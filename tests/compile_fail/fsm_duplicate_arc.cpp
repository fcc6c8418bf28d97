// expect-error: arc listed twice
// A malformed arc list is not a constant expression: the machine does not compile.
#include <array>

#include <keepalive/fsm/table.hpp>

using namespace keepalive;

enum class lamp : unsigned char { off, on, broken };

constexpr auto lamp_arcs = std::to_array<fsm::arc<lamp>>({
    {lamp::off, lamp::on, "switch"},
    {lamp::on, lamp::off, "switch"},
    {lamp::off, lamp::broken, "fail", fsm::arc_kind::failure},
    {lamp::on, lamp::broken, "fail", fsm::arc_kind::failure},
    {lamp::broken, lamp::off, "replace", fsm::arc_kind::reset},
#ifdef KEEPALIVE_COMPILE_FAIL
    {lamp::off, lamp::on, "switch again"},
#endif
});
constexpr fsm::table<lamp, 3, lamp_arcs.size()> lamp_table{lamp::off, lamp::broken, lamp_arcs};
static_assert(lamp_table.error_left_only_by_reset());
