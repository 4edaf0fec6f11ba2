/* JPEG decoding for src/data/jpeg.rs through the libjpeg API of libjpeg-turbo (the library
 * Pillow bundles): a JPEG held in memory to interleaved RGB, optionally at 1/2, 1/4 or 1/8 of
 * its size by the IDCT's scaling (what Pillow's Image.draft asks libjpeg for).
 *
 * libjpeg reports a fatal error by calling error_exit, which must not return: it longjmps
 * back into the call that failed, which hands the message to Rust. Warnings are ignored as
 * Pillow and djpeg ignore them, except "premature end of data": libjpeg then pads the image
 * with grey, Pillow refuses the truncated file, and so does mtl.
 *
 * The settings are libjpeg's defaults, which are Pillow's: the accurate integer IDCT
 * (JDCT_ISLOW) and fancy (smooth) chroma upsampling (docs/DECISIONS.md, "JPEG decoding").
 */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} mtl_error;

typedef struct {
    struct jpeg_decompress_struct cinfo;
    mtl_error err;
} mtl_jpeg;

static void on_error(j_common_ptr cinfo) {
    mtl_error *err = (mtl_error *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        on_error(cinfo);
    }
}

mtl_jpeg *mtl_jpeg_new(void) {
    mtl_jpeg *volatile j = calloc(1, sizeof(mtl_jpeg));
    if (!j) {
        return NULL;
    }
    j->cinfo.err = jpeg_std_error(&j->err.pub);
    j->err.pub.error_exit = on_error;
    j->err.pub.emit_message = on_message;
    if (setjmp(j->err.jump)) {
        free(j);
        return NULL;
    }
    jpeg_create_decompress(&j->cinfo);
    return j;
}

void mtl_jpeg_free(mtl_jpeg *j) {
    if (j) {
        jpeg_destroy_decompress(&j->cinfo);
        free(j);
    }
}

const char *mtl_jpeg_message(const mtl_jpeg *j) { return j->err.message; }

/* Reads the header of `len` bytes at `data` (which must outlive the decode): the stored
 * width and height, and whether the colour space is one libjpeg turns into RGB (not CMYK or
 * YCCK). Returns 0, or -1 with the message in mtl_jpeg_message. */
int mtl_jpeg_header(mtl_jpeg *j, const unsigned char *data, size_t len, unsigned *width, unsigned *height,
                    int *to_rgb) {
    if (setjmp(j->err.jump)) {
        jpeg_abort_decompress(&j->cinfo);
        return -1;
    }
    jpeg_mem_src(&j->cinfo, data, (unsigned long)len);
    jpeg_read_header(&j->cinfo, TRUE);
    *width = j->cinfo.image_width;
    *height = j->cinfo.image_height;
    *to_rgb = j->cinfo.jpeg_color_space != JCS_CMYK && j->cinfo.jpeg_color_space != JCS_YCCK;
    return 0;
}

/* Starts decoding to RGB at 1/`denom` of the stored size (1, 2, 4 or 8): the output's width
 * and height are ceil(stored / denom). Returns 0, or -1 with the message. */
int mtl_jpeg_start(mtl_jpeg *j, unsigned denom, unsigned *width, unsigned *height) {
    if (setjmp(j->err.jump)) {
        jpeg_abort_decompress(&j->cinfo);
        return -1;
    }
    j->cinfo.out_color_space = JCS_RGB;
    j->cinfo.scale_num = 1;
    j->cinfo.scale_denom = denom;
    jpeg_start_decompress(&j->cinfo);
    *width = j->cinfo.output_width;
    *height = j->cinfo.output_height;
    return 0;
}

/* Decodes every row into `out` (3 · width · height bytes, rows packed) and ends the
 * decode. Returns 0, or -1 with the message. */
int mtl_jpeg_read(mtl_jpeg *j, unsigned char *out) {
    if (setjmp(j->err.jump)) {
        jpeg_abort_decompress(&j->cinfo);
        return -1;
    }
    size_t stride = (size_t)j->cinfo.output_width * 3;
    while (j->cinfo.output_scanline < j->cinfo.output_height) {
        JSAMPROW rows[4];
        int n = 0;
        for (; n < 4 && j->cinfo.output_scanline + n < j->cinfo.output_height; n++) {
            rows[n] = out + (size_t)(j->cinfo.output_scanline + n) * stride;
        }
        jpeg_read_scanlines(&j->cinfo, rows, n);
    }
    jpeg_finish_decompress(&j->cinfo);
    return 0;
}
