// expect-error: no matching function for call to .*keepalive::model::device<keepalive::fsm::device_state::running>::token.. const
// A RUNNING device holds no token: the accessor does not exist.
#include <keepalive/model/device.hpp>

using namespace keepalive;
using namespace keepalive::model;

token token_of(const device<device_state::kept_alive>& d) { return d.token(); }

#ifdef KEEPALIVE_COMPILE_FAIL
token token_of(const device<device_state::running>& d) { return d.token(); }
#endif
