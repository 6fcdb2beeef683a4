"""A parsed template: rendering, and the tree queries Ollama's `template` package makes."""

from __future__ import annotations

from typing import Any

from appliance.prompting.gotemplate.executor import execute
from appliance.prompting.gotemplate.nodes import Action, Branch, Command, Field, Pipe, Variable
from appliance.prompting.gotemplate.parser import parse_nodes


def parse_template(text: str) -> Template:
    """Parse `text`; raises TemplateError, naming the line, for anything outside the subset."""
    return Template(parse_nodes(text), text)


class Template:
    """A parsed template; `render` is pure, so one parse serves every request."""

    def __init__(self, nodes: list[Any], source: str) -> None:
        self.nodes = nodes
        self.source = source

    def render(self, data: Any) -> str:
        """Execute with `data` as dot and `$`; raises TemplateError on a run-time failure."""
        return execute(self.nodes, data)

    # -- tree queries Ollama's template package needs -----------------------------------------

    def identifiers(self) -> set[str]:
        """Lower-cased field and variable names used in actions and branch pipes (Ollama `Vars`)."""
        found: set[str] = set()

        def pipe(p: Pipe) -> None:
            for cmd in p.cmds:
                for arg in cmd.args:
                    if isinstance(arg, Field):
                        found.update(n.lower() for n in arg.names)
                    elif isinstance(arg, Variable):
                        found.update(n.lower() for n in [arg.name, *arg.names])
                    elif isinstance(arg, Pipe):
                        pipe(arg)

        def walk(nodes: list[Any]) -> None:
            for node in nodes:
                if isinstance(node, Action):
                    pipe(node.pipe)
                elif isinstance(node, Branch):
                    pipe(node.pipe)
                    walk(node.body)
                    if node.else_body is not None:
                        walk(node.else_body)

        walk(self.nodes)
        return found

    def with_response_appended(self) -> Template:
        """This template followed by `{{ .Response }}` (Ollama does so when neither is used)."""
        response = Action(Pipe(0, [], False, [Command([Field(["Response"])])]))
        return Template([*self.nodes, response], self.source)

    def cut_after_response(self) -> Template:
        """Drop every node after the first `.Response` action, as Ollama does for the last turn.

        Mirrors Ollama's `deleteNode`: the walk visits branch bodies but not branch conditions,
        and keeps the action holding `.Response` itself.
        """
        cut = False

        def pipe(p: Pipe) -> Pipe | None:
            nonlocal cut
            cmds: list[Command] = []
            for cmd in p.cmds:
                args: list[Any] = []
                for arg in cmd.args:
                    if cut:
                        continue
                    if isinstance(arg, Field) and "Response" in arg.names:
                        cut = True
                        args.append(arg)
                    elif isinstance(arg, Pipe):
                        inner = pipe(arg)
                        if inner is not None:
                            args.append(inner)
                    else:
                        args.append(arg)
                if args:
                    cmds.append(Command(args))
                else:
                    return None
            return Pipe(p.line, p.decl, p.is_assign, cmds) if cmds else None

        def walk(nodes: list[Any]) -> list[Any]:
            kept: list[Any] = []
            for node in nodes:
                if cut:
                    continue
                if isinstance(node, Action):
                    new_pipe = pipe(node.pipe)
                    if new_pipe is not None:
                        kept.append(Action(new_pipe))
                elif isinstance(node, Branch):
                    body = walk(node.body)
                    else_body = None if node.else_body is None else walk(node.else_body)
                    kept.append(Branch(node.kind, node.pipe, body, else_body))
                else:
                    kept.append(node)
            return kept

        return Template(walk(self.nodes), self.source)
