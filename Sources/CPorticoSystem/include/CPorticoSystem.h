// The Linux calls Portico's server core makes that Swift's Glibc module leaves out:
// epoll, eventfd, and accept4 (a GNU extension).
#ifndef CPORTICO_SYSTEM_H
#define CPORTICO_SYSTEM_H

#ifdef __linux__
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

/// accept4(2): a connection with its flags set in the same call.
int portico_accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);

/// The 64-bit tag of an epoll event (the event struct is packed on x86-64, and its data is a union).
static inline uint64_t portico_epoll_event_tag(const struct epoll_event *event) { return event->data.u64; }
static inline uint32_t portico_epoll_event_flags(const struct epoll_event *event) { return event->events; }

/// epoll_ctl(2) with the interest and tag given as plain values.
int portico_epoll_ctl(int epoll, int operation, int fd, uint32_t events, uint64_t tag);

/// Names the calling thread (at most 15 bytes are kept).
void portico_set_thread_name(const char *name);
#endif

#endif
