"""Stand-in for comfy_execution.graph_utils.ExecutionBlocker (see README.md)."""


class ExecutionBlocker:
    def __init__(self, message):
        self.message = message
