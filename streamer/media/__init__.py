"""Media: sources, H.264/AAC encoding and fMP4 segmenting with PyAV, and the stream format inside a feed."""
