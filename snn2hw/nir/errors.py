"""The one error type of NIR import and export."""
from __future__ import annotations


class NIRError(ValueError):
    """A NIR file or graph cannot be read, or uses something snn2hw cannot map.

    ``problems`` lists every problem found (each names the node, the parameter and the reason);
    the message joins them.
    """

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))
