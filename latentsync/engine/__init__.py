"""The run engine: how one lip-sync run turns a video and its audio features into synced frames.

    plan.py      RunPlan: everything fixed before the first frame (inputs, frame counts, memory plan, range)
    control.py   RunControl (cancel, stop, progress, stage times), RunBatches (batch sizes, halved on OOM), Group,
                 and the two loops every stage shares: ``retry_smaller`` and ``in_pieces``
    align.py     stage 1: decode -> detect / align, streamed (FaceAligner: the face stage in the plan's batches)
    pingpong.py  stage 1 when the audio outlasts the video: align once, keep, replay forward and back
    synthesis.py stage 2: VAE + UNet denoising of each group
    restore.py   stage 3: the synced faces pasted back into their frames
    threads.py   the stages' threads, bounded queues and reused frame buffers
    run.py       SyncedFrames: the short orchestrator that joins the stages and reports the result

The steps of a run, numbered where they happen: 1. plan, 2. audio features (``LipSyncPipeline.frames``), 3. align,
4. synthesise, 5. restore (``SyncedFrames._made``), 6. write (``LipSyncPipeline.run``).

Three kinds of frame index, each named for its space:
    source frames  the video's own (``FrameSource.num_frames``)
    output frames  what a run delivers: video kept before the speech, the synced frames, video kept after it
                   (``Timeline.total``, ``RunResult.output_frames``, ``RunPlan.output_range``, ``Segment.start``)
    speech frames  the synced frames, 0 at the speech's first (``RunPlan.speech_frames``, ``speech_start`` and
                   ``speech_stop``, ``Group.speech_start``); output frame = ``Timeline.lead`` + speech frame
"""
