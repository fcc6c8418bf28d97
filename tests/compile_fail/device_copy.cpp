// expect-error: use of deleted function .*keepalive::model::device<S>::device.const keepalive::model::device<S>&
// A handle is the only proof of a state: copying it would let two owners act.
#include <keepalive/model/device.hpp>

using namespace keepalive;
using namespace keepalive::model;

device<device_state::ownerless> pass_on(device<device_state::ownerless>&& d) {
  device<device_state::ownerless> moved = std::move(d);
  return moved;
}

#ifdef KEEPALIVE_COMPILE_FAIL
device<device_state::ownerless> duplicate(const device<device_state::ownerless>& d) {
  device<device_state::ownerless> copy = d;
  return copy;
}
#endif
