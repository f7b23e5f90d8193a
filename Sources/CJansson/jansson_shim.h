/* Exposes the system's jansson to Swift (libjansson-dev). */
#include <jansson.h>
