// expect-error: invalid initialization of reference of type .*keepalive::model::device<keepalive::fsm::device_state::running>&&
// enter exists only for RUNNING: a double enter (EBUSY at the ABI) does not compile.
#include <keepalive/model/device.hpp>

using namespace keepalive;
using namespace keepalive::model;

bool enter_once(device<device_state::running>&& d, const token& t) { return enter(std::move(d), t).has_value(); }

#ifdef KEEPALIVE_COMPILE_FAIL
bool enter_twice(device<device_state::kept_alive>&& d, const token& t) { return enter(std::move(d), t).has_value(); }
#endif
