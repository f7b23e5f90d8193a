/* Makes include/goxelpool.h a C module for the Swift shim, so the compiler checks every
 * @c @implementation function against the prototype users compile with. No code lives here. */
#include "goxelpool.h"
