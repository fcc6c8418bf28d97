// expect-error: no matching function for call to .*transition<keepalive::fsm::domain_state::adopted>
// Only a PRESERVED domain can be adopted.
#include <keepalive/model/domain.hpp>

using namespace keepalive;
using namespace keepalive::model;

domain<domain_state::adopted> adopt_legally(domain<domain_state::preserved>&& d) { return adopt(std::move(d)); }

#ifdef KEEPALIVE_COMPILE_FAIL
domain<domain_state::adopted> adopt_nothing(domain<domain_state::none>&& d) {
  return transition<domain_state::adopted>(std::move(d));
}
#endif
