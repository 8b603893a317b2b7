// The Linux calls Portico's server core makes that Swift's Glibc module leaves out:
// epoll, eventfd, accept4 (a GNU extension) and naming a thread.
//
// The header includes no system header of its own (only <stdint.h>): a module that pulls in
// <sys/socket.h> takes over its declarations, and Swift code of the same target that gets
// SOCK_STREAM and the like from Glibc no longer finds them.
#ifndef CPORTICO_SYSTEM_H
#define CPORTICO_SYSTEM_H

#include <stdint.h>

/// One ready descriptor: its epoll events and the tag it was registered with.
typedef struct {
    uint32_t events;
    uint64_t tag;
} portico_event;

/// epoll's event bits and operations.
extern const uint32_t portico_epoll_in;
extern const uint32_t portico_epoll_out;
extern const uint32_t portico_epoll_err;
extern const uint32_t portico_epoll_hup;
extern const uint32_t portico_epoll_rdhup;
extern const int portico_epoll_add;
extern const int portico_epoll_mod;
extern const int portico_epoll_del;

/// epoll_create1(EPOLL_CLOEXEC).
int portico_epoll_create(void);
/// epoll_ctl(2) with the interest and tag given as plain values.
int portico_epoll_ctl(int epoll, int operation, int fd, uint32_t events, uint64_t tag);
/// epoll_wait(2) into `events` (at most 1024).
int portico_epoll_wait(int epoll, portico_event *events, int capacity, int timeout);
/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK).
int portico_eventfd(void);
/// accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC; `address` is a sockaddr_storage.
int portico_accept(int fd, void *address, uint32_t *length);
/// send(2) with MSG_NOSIGNAL: a peer that has gone makes it fail with EPIPE, not raise SIGPIPE.
long portico_send(int fd, const void *bytes, unsigned long count);
/// sendmsg(2) of `count` iovecs with MSG_NOSIGNAL.
long portico_sendv(int fd, const void *iovecs, int count);
/// Names the calling thread (at most 15 bytes are kept).
void portico_set_thread_name(const char *name);

#endif
