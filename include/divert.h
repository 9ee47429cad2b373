/*
 * divert.h: the FreeBSD divert(4) constants for programs built on Linux.
 *
 * A FreeBSD divert program needs PF_DIVERT / AF_DIVERT (FreeBSD 14's form,
 * socket(PF_DIVERT, SOCK_RAW, 0)) or IPPROTO_DIVERT (the older form,
 * socket(PF_INET, SOCK_RAW, IPPROTO_DIVERT)); FreeBSD gets them from
 * <sys/socket.h> and <netinet/in.h>.  Linux has neither, so a program
 * includes this header and runs with LD_PRELOAD=libdivert_shim.so (or links
 * -ldivert_shim), which turns those calls into divertd clients.
 *
 * On Linux, 44 is AF_XDP: the shim claims (44, SOCK_RAW) before libc's
 * socket() reaches the kernel, so do not mix this header with AF_XDP code.
 */
#ifndef DIVERT_H
#define DIVERT_H

#include <sys/socket.h>
#include <netinet/in.h>

#ifndef PF_DIVERT
#define PF_DIVERT 44
#endif
#ifndef AF_DIVERT
#define AF_DIVERT PF_DIVERT
#endif
#ifndef IPPROTO_DIVERT
#define IPPROTO_DIVERT 258
#endif

/*
 * The IPPROTO_DIVERT that divert programs built on Linux define for
 * themselves (glibc has none), Debian's libdaq2 daq_ipfw.so among them:
 * the shim takes socket(PF_INET, SOCK_RAW, 254) as a divert socket too.
 */
#define DIVERT_IPPROTO_LINUX 254

/* Default send and receive buffer of a divert socket (65536 + 100). */
#define DIVERT_SOCKBUF_DEFAULT 65636

/* Where divertd listens unless $DIVERT_SOCKET names another socket. */
#define DIVERT_SOCKET_DEFAULT "/run/divertd/divertd.sock"

#endif /* DIVERT_H */
