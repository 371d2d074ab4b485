"""Video I/O: probe and stream-decode (PyAV), encode through an ffmpeg pipe (NVENC when present), mux audio."""

from .errors import FFmpegNotFoundError, MediaError
from .ffmpeg import choose_video_encoder, find_ffmpeg, nvenc_available, video_encoder
from .rates import NTSC_RATES, frame_rate
from .reader import VideoInfo, check_audio_file, count_frames, iter_frame_batches, probe_video, variable_frame_rate
from .writer import VideoWriter, join_videos, write_wav

__all__ = [
    "FFmpegNotFoundError", "MediaError", "NTSC_RATES", "VideoInfo", "VideoWriter", "check_audio_file",
    "choose_video_encoder", "count_frames", "find_ffmpeg", "frame_rate", "iter_frame_batches", "nvenc_available",
    "probe_video", "join_videos", "variable_frame_rate", "video_encoder", "write_wav",
]
