#define _GNU_SOURCE
#include "CPorticoSystem.h"

#ifdef __linux__
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

const uint32_t portico_epoll_in = EPOLLIN;
const uint32_t portico_epoll_out = EPOLLOUT;
const uint32_t portico_epoll_err = EPOLLERR;
const uint32_t portico_epoll_hup = EPOLLHUP;
const uint32_t portico_epoll_rdhup = EPOLLRDHUP;
const int portico_epoll_add = EPOLL_CTL_ADD;
const int portico_epoll_mod = EPOLL_CTL_MOD;
const int portico_epoll_del = EPOLL_CTL_DEL;

int portico_epoll_create(void) {
    return epoll_create1(EPOLL_CLOEXEC);
}

int portico_epoll_ctl(int epoll, int operation, int fd, uint32_t events, uint64_t tag) {
    struct epoll_event event;
    event.events = events;
    event.data.u64 = tag;
    return epoll_ctl(epoll, operation, fd, &event);
}

int portico_epoll_wait(int epoll, portico_event *events, int capacity, int timeout) {
    struct epoll_event ready[1024];
    if (capacity > 1024) capacity = 1024;
    int count = epoll_wait(epoll, ready, capacity, timeout);
    for (int index = 0; index < count; index++) {
        events[index].events = ready[index].events;
        events[index].tag = ready[index].data.u64;
    }
    return count;
}

int portico_eventfd(void) {
    return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

int portico_accept(int fd, void *address, uint32_t *length) {
    socklen_t size = *length;
    int accepted = accept4(fd, (struct sockaddr *)address, &size, SOCK_NONBLOCK | SOCK_CLOEXEC);
    *length = size;
    return accepted;
}

long portico_send(int fd, const void *bytes, unsigned long count) {
    return send(fd, bytes, count, MSG_NOSIGNAL);
}

long portico_sendv(int fd, const void *iovecs, int count) {
    struct msghdr message = {0};
    message.msg_iov = (struct iovec *)iovecs;
    message.msg_iovlen = count;
    return sendmsg(fd, &message, MSG_NOSIGNAL);
}

void portico_set_thread_name(const char *name) {
    pthread_setname_np(pthread_self(), name);
}
#endif
