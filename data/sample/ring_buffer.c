/* A fixed-size ring buffer of bytes. */
#include <stddef.h>
#include <string.h>

typedef struct {
    unsigned char *data;
    size_t capacity;
    size_t head;  /* next write */
    size_t tail;  /* next read */
    size_t size;
} ring_buffer;

void rb_init(ring_buffer *rb, unsigned char *storage, size_t capacity) {
    rb->data = storage;
    rb->capacity = capacity;
    rb->head = rb->tail = rb->size = 0;
}

size_t rb_write(ring_buffer *rb, const unsigned char *src, size_t n) {
    size_t written = 0;
    while (written < n && rb->size < rb->capacity) {
        rb->data[rb->head] = src[written++];
        rb->head = (rb->head + 1) % rb->capacity;
        rb->size++;
    }
    return written;
}

size_t rb_read(ring_buffer *rb, unsigned char *dst, size_t n) {
    size_t read = 0;
    while (read < n && rb->size > 0) {
        dst[read++] = rb->data[rb->tail];
        rb->tail = (rb->tail + 1) % rb->capacity;
        rb->size--;
    }
    return read;
}
