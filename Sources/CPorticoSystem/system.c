#ifdef __linux__
#define _GNU_SOURCE
#include "CPorticoSystem.h"
#include <pthread.h>

int portico_accept4(int fd, struct sockaddr *address, socklen_t *length, int flags) {
    return accept4(fd, address, length, flags);
}

int portico_epoll_ctl(int epoll, int operation, int fd, uint32_t events, uint64_t tag) {
    struct epoll_event event;
    event.events = events;
    event.data.u64 = tag;
    return epoll_ctl(epoll, operation, fd, &event);
}

void portico_set_thread_name(const char *name) {
    pthread_setname_np(pthread_self(), name);
}
#endif
