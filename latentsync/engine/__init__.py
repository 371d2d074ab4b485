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
"""
