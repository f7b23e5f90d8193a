/* Linux headers that Swift's Glibc module leaves out: eventfd(2) for dispatch mode's event fd. */
#include <sys/eventfd.h>
