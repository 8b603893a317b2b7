#ifndef PORTICO_CURL_SHIM_H
#define PORTICO_CURL_SHIM_H
#include <curl/curl.h>

// curl_easy_setopt is variadic, which Swift cannot call: one typed wrapper per kind of value.
static inline CURLcode portico_curl_set_long(CURL *curl, CURLoption option, long value) { return curl_easy_setopt(curl, option, value); }
static inline CURLcode portico_curl_set_string(CURL *curl, CURLoption option, const char *value) { return curl_easy_setopt(curl, option, value); }
static inline CURLcode portico_curl_set_pointer(CURL *curl, CURLoption option, void *value) { return curl_easy_setopt(curl, option, value); }
static inline CURLcode portico_curl_set_list(CURL *curl, CURLoption option, struct curl_slist *value) { return curl_easy_setopt(curl, option, value); }
typedef size_t (*portico_curl_read)(char *buffer, size_t size, size_t count, void *context);
static inline CURLcode portico_curl_set_reader(CURL *curl, portico_curl_read reader) { return curl_easy_setopt(curl, CURLOPT_READFUNCTION, reader); }
static inline CURLcode portico_curl_response_code(CURL *curl, long *code) { return curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, code); }
#endif
