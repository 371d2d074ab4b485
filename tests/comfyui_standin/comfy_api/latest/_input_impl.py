"""Stand-in for comfy_api.latest.InputImpl (see README.md): VIDEO from a file or from components."""

from __future__ import annotations

import io
from fractions import Fraction

from comfy_api.latest._util import VideoComponents


class VideoInput:
    """The abstract VIDEO type; its default stream source encodes the video into a buffer."""

    def get_components(self) -> VideoComponents:
        raise NotImplementedError

    def save_to(self, path, format="auto", codec="auto", metadata=None):
        raise NotImplementedError

    def get_stream_source(self):
        buffer = io.BytesIO()
        self.save_to(buffer)
        buffer.seek(0)
        return buffer


class VideoFromFile(VideoInput):
    def __init__(self, file):
        self.__file = file

    def get_stream_source(self):
        if isinstance(self.__file, io.BytesIO):
            self.__file.seek(0)
        return self.__file

    def get_components(self) -> VideoComponents:
        import av
        import numpy as np
        import torch

        if isinstance(self.__file, io.BytesIO):
            self.__file.seek(0)
        with av.open(self.__file, mode="r") as container:
            frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) / 255.0 for f in container.decode(video=0)]
            stream = container.streams.video[0]
            rate = Fraction(stream.average_rate) if stream.average_rate else Fraction(1)
            audio = None
            if container.streams.audio:
                container.seek(0)
                chunks = [f.to_ndarray() for f in container.decode(audio=0)]
                audio = {"waveform": torch.from_numpy(np.concatenate(chunks, axis=1))[None],
                         "sample_rate": int(container.streams.audio[0].sample_rate)}
        return VideoComponents(images=torch.stack(frames), audio=audio, frame_rate=rate)


class VideoFromComponents(VideoInput):
    def __init__(self, components: VideoComponents):
        self.__components = components

    def get_components(self) -> VideoComponents:
        return VideoComponents(images=self.__components.images, audio=self.__components.audio,
                               frame_rate=self.__components.frame_rate)
