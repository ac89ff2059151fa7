"""Datasets, in layers: the record format (records), the tf.data reader (input_pipeline), the sources
(sources/: faces, chairs, smallNORB) and their command lines (make_faces, make_chairs, make_smallnorb)."""
