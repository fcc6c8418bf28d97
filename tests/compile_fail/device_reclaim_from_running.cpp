// expect-error: no matching function for call to .*reclaim.std::remove_reference<keepalive::model::device<keepalive::fsm::device_state::running>
// A RUNNING device is not in keepalive: there is nothing to reclaim.
#include <keepalive/model/device.hpp>

using namespace keepalive;
using namespace keepalive::model;

bool reclaim_ownerless(device<device_state::ownerless>&& d, const token& t) {
  return reclaim(std::move(d), t).has_value();
}

#ifdef KEEPALIVE_COMPILE_FAIL
bool reclaim_running(device<device_state::running>&& d, const token& t) {
  return reclaim(std::move(d), t).has_value();
}
#endif
