// expect-error: no matching function for call to .*transition<keepalive::fsm::vector_state::posted>
// Posting needs an IRTE: FREE -> POSTED is not an arc, only FREE -> REMAPPED -> POSTED.
#include <keepalive/model/vector.hpp>

using namespace keepalive;
using namespace keepalive::model;

bool post_legally(msix_vector<vector_state::free>&& v, hpa pid) {
  return connect(setup(std::move(v), irte_index{1}, keepalive::vector{0x30}), pid).has_value();
}

#ifdef KEEPALIVE_COMPILE_FAIL
bool post_free(msix_vector<vector_state::free>&& v, hpa pid) {
  return transition<vector_state::posted>(std::move(v), pid).has_value();
}
#endif
