"""Where datasets come from: the faces generator (its face model, the Basel Face Model loader and the
rasterizer) and the converters of the 3D chairs and smallNORB, over the helpers they share (common)."""
