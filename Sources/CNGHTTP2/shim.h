// The system's libnghttp2 (Debian's libnghttp2-dev): HTTP/2 on every listener, its frames,
// HPACK, flow control, settings and flood protections.
#ifndef C_PORTICO_NGHTTP2_H
#define C_PORTICO_NGHTTP2_H

#include <nghttp2/nghttp2.h>

#endif
