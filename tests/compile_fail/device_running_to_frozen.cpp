// expect-error: no matching function for call to .*transition<keepalive::fsm::device_state::frozen>
// RUNNING -> FROZEN is not an arc (stage 2 only freezes OWNERLESS or RESTORED devices).
#include <keepalive/model/device.hpp>

using namespace keepalive;
using namespace keepalive::model;

device<device_state::ownerless> freeze_legally(device<device_state::kept_alive>&& d) {
  return close(std::move(d));
}

#ifdef KEEPALIVE_COMPILE_FAIL
device<device_state::frozen> freeze_running(device<device_state::running>&& d) {
  return transition<device_state::frozen>(std::move(d));
}
#endif
