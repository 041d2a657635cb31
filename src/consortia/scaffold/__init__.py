"""``consortia new``: a runnable project to start from, for each framework."""

from consortia.scaffold.new import FRAMEWORKS, new_project

__all__ = ["FRAMEWORKS", "new_project"]
