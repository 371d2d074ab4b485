"""The single attention call site of the UNet.

Every attention module of the UNet (spatial self-attention, audio cross-attention, temporal motion-module
attention) holds an ``AttentionBackend`` and calls it as

    out = backend(q, k, v, role=role, hw=(h, w))

with ``q, k, v`` shaped ``(batch, heads, tokens, head_dim)`` and ``role`` one of ``ROLES``; ``hw`` is the
spatial size of the token grid for spatial roles (``None`` for temporal). The backend is chosen per model at
load time (``UNet3DConditionModel.set_attention_backend``); the default is ``standard``.

    registry.py   the one table of backends (names, kernels, fallbacks, lip_focus support); torch-free
    core.py       the interface and the reference ``standard`` kernel
    backends.py   ``flash`` (torch SDPA), ``xformers``, ``flex`` (with ``lip_focus``)
    selection.py  ``create_backend(name, device, dtype, ...)`` (``auto`` by rule), ``backend_report``

Logger: ``latentsync.attention``. Disable backends with ``LATENTSYNC_DISABLE_ATTENTION="flex,xformers"``.
Names are imported from the module that defines them; this file imports nothing, so ``registry.py`` (the options'
backend names) loads without torch.
"""
