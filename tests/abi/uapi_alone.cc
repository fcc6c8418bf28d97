// The uapi header compiles alone as C++ with -Werror.
#include <linux/vfio_keepalive.h>
extern const int uapi_alone_cxx;
const int uapi_alone_cxx = static_cast<int>(sizeof(vfio_keepalive_enter));
