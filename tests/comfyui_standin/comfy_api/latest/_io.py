"""Stand-in for comfy_api.latest.io (see README.md): inputs, outputs, the schema, and a node's V1 view of it
(``INPUT_TYPES``, ``RETURN_TYPES``, ...) as /object_info serves it, with the same names and dict layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"


class HiddenHolder:
    def __init__(self, values: dict):
        self.unique_id = values.get(Hidden.unique_id)
        self.prompt = values.get(Hidden.prompt)
        self.extra_pnginfo = values.get(Hidden.extra_pnginfo)
        self.dynprompt = values.get(Hidden.dynprompt)

    @classmethod
    def from_dict(cls, values: dict | None) -> "HiddenHolder":
        return cls(values or {})


def _pruned(values: dict) -> dict:
    return {key: value for key, value in values.items() if value is not None}


class Input:
    io_type: str = None

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 extra_dict=None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict if extra_dict is not None else {}

    def as_dict(self) -> dict:
        return _pruned({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                        "lazy": self.lazy}) | _pruned(self.extra_dict)

    def get_io_type(self) -> str:
        return self.io_type


class WidgetInput(Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 socketless=None, widget_type=None, force_input=None, extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless, self.force_input = default, socketless, force_input

    def as_dict(self) -> dict:
        return super().as_dict() | _pruned({"default": self.default, "socketless": self.socketless,
                                            "forceInput": self.force_input})


class Output:
    io_type: str = None

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _comfy_type(io_type: str, input_base=Input):
    """A type with its Input and Output classes (what ComfyUI's ``@comfytype`` makes)."""
    return type(io_type, (), {"io_type": io_type,
                              "Input": type("Input", (input_base,), {"io_type": io_type}),
                              "Output": type("Output", (Output,), {"io_type": io_type})})


def Custom(io_type: str):  # noqa: N802 (ComfyUI's name)
    return _comfy_type(io_type)


class Boolean:
    io_type = "BOOLEAN"

    class Input(WidgetInput):
        io_type = "BOOLEAN"

        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                     label_on=None, label_off=None, socketless=None, force_input=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.label_on, self.label_off = label_on, label_off

        def as_dict(self):
            return super().as_dict() | _pruned({"label_on": self.label_on, "label_off": self.label_off})


class _Number(WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, control_after_generate=None, display_mode=None, socketless=None,
                 force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step = min, max, step
        self.control_after_generate, self.display_mode = control_after_generate, display_mode

    def as_dict(self):
        return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step,
                                            "control_after_generate": self.control_after_generate,
                                            "display": self.display_mode})


class Int:
    io_type = "INT"

    class Input(_Number):
        io_type = "INT"


class Float:
    io_type = "FLOAT"

    class Input(_Number):
        io_type = "FLOAT"

        def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                     max=None, step=None, round=None, display_mode=None, socketless=None, force_input=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, min, max, step, None, display_mode,
                             socketless, force_input)
            self.round = round


class Combo:
    io_type = "COMBO"

    class Input(WidgetInput):
        io_type = "COMBO"

        def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None,
                     default=None, control_after_generate=None, upload=None, image_folder=None, remote=None,
                     socketless=None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
            self.options, self.control_after_generate = options, control_after_generate

        def as_dict(self):
            return super().as_dict() | _pruned({"options": self.options,
                                                "control_after_generate": self.control_after_generate})


Image = _comfy_type("IMAGE")
Mask = _comfy_type("MASK")
Audio = _comfy_type("AUDIO")
Video = _comfy_type("VIDEO")


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    search_aliases: list = field(default_factory=list)
    is_output_node: bool = False

    def finalize(self):
        """An output node gets the prompt and the workflow as hidden inputs; outputs without ids get one."""
        if self.is_output_node:
            for hidden in (Hidden.prompt, Hidden.extra_pnginfo):
                if hidden not in self.hidden:
                    self.hidden.append(hidden)
        for index, output in enumerate(self.outputs):
            if output.id is None:
                output.id = f"_{index}_{output.io_type}_"

    def validate(self):
        ids = [item.id for item in self.inputs] + [item.id for item in self.outputs]
        if len(ids) != len(set(ids)):
            raise ValueError(f"input and output ids must be unique: {ids}")

    def v1_inputs(self) -> dict:
        inputs = {"required": {}}
        for item in self.inputs:
            as_dict = item.as_dict()
            as_dict.pop("optional", None)
            inputs.setdefault("optional" if item.optional else "required", {})[item.id] = (item.get_io_type(),
                                                                                            as_dict)
        for hidden in self.hidden:
            inputs.setdefault("hidden", {})[hidden.name] = (hidden.value,)
        return inputs


class _ClassProperty:
    def __init__(self, getter):
        self.getter = getter

    def __get__(self, instance, owner):
        return self.getter(owner)


class ComfyNode:
    hidden: HiddenHolder = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:  # noqa: N802 (ComfyUI's names, here and below)
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        return schema

    @classmethod
    def INPUT_TYPES(cls, include_hidden=True) -> dict:  # noqa: N802
        inputs = cls.GET_SCHEMA().v1_inputs()
        if not include_hidden:
            inputs.pop("hidden", None)
        return inputs

    RETURN_TYPES = _ClassProperty(lambda cls: tuple(o.io_type for o in cls.GET_SCHEMA().outputs))
    RETURN_NAMES = _ClassProperty(lambda cls: tuple(o.display_name or o.io_type for o in cls.GET_SCHEMA().outputs))
    OUTPUT_TOOLTIPS = _ClassProperty(lambda cls: tuple(o.tooltip for o in cls.GET_SCHEMA().outputs))
    OUTPUT_NODE = _ClassProperty(lambda cls: cls.GET_SCHEMA().is_output_node)
    DESCRIPTION = _ClassProperty(lambda cls: cls.GET_SCHEMA().description)
    CATEGORY = _ClassProperty(lambda cls: cls.GET_SCHEMA().category)


class NodeOutput:
    def __init__(self, *args: Any, ui=None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None

    def __getitem__(self, index):
        return self.args[index]
