/* cf_image.h: writing images as PNG files (a grid of samples, a strip of interpolations).
 *
 * Images come as a float tensor (B, H, W, C) of the model's data space, values in
 * [-0.5, 0.5]; each value maps back to 8 bits as floor((x + 0.5) * 256) clamped to 0..255 (NaN
 * gives 0), the inverse of the uniform dequantization in cf_data.h. C is 1 (gray PNG) or 3
 * (RGB PNG).
 *
 * The file is written to "<path>.tmp.<pid>" beside path, flushed to disk, then renamed over
 * path: a failed or interrupted write never leaves a partial file at path, and the
 * temporary is removed on failure.
 *
 * Not here: reading images (cf_data.h's png:DIR), other formats, resizing, color maps.
 */
#ifndef CF_IMAGE_H
#define CF_IMAGE_H

#include "cf_tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Writes images (B, H, W, C), f32 or f64 (borrowed), as a grid of ncols images per row
 * (ncols <= 0: ceil(sqrt(B))) and ceil(B / ncols) rows, with `border` pixels (0 to 16) of white
 * around and between the images; unused cells of the last row are white too. The PNG is
 * ncols * (W + border) + border pixels wide and rows * (H + border) + border high. Returns
 * CF_OK, CF_ERR_SHAPE or CF_ERR_ARG for unusable images or arguments, or CF_ERR_IO with a
 * message naming path. */
cf_status cf_image_write_grid(const char *path, const cf_tensor *images, int ncols, int border);

#ifdef __cplusplus
}
#endif
#endif
