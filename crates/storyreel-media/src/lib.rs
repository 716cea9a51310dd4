//! storyreel-media: RGB frames in, video files and live-stream segments out.
