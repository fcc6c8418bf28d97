// expect-error: no matching function for call to .*teardown.std::remove_reference<keepalive::model::msix_vector<keepalive::fsm::vector_state::preserved>
// A PRESERVED vector's IRTE is never freed by an ordinary teardown (only by discard).
#include <keepalive/model/vector.hpp>

using namespace keepalive;
using namespace keepalive::model;

msix_vector<vector_state::free> discard_legally(msix_vector<vector_state::preserved>&& v) {
  return discard(std::move(v));
}

#ifdef KEEPALIVE_COMPILE_FAIL
msix_vector<vector_state::free> tear_down_preserved(msix_vector<vector_state::preserved>&& v) {
  return teardown(std::move(v));
}
#endif
