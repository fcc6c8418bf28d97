/* The uapi header compiles alone as C99 with -Werror. */
#include <linux/vfio_keepalive.h>
int uapi_alone_c = (int)sizeof(struct vfio_keepalive_enter);
