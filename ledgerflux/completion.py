"""Shell completion scripts for ``ledgerflux`` (``ledgerflux completion bash|zsh``).

The scripts are generated from the argparse parser itself, so they always list the
commands and options this version has. They complete command names, each command's
options, and the role names of ``ctl`` (from the control sockets present under the data
dir at the time of completion).
"""

from __future__ import annotations

import argparse

__all__ = ["completion_script", "options_by_command"]


def options_by_command(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """``{command: [its long options]}``, and ``""`` for the options before a command."""
    out: dict[str, list[str]] = {"": _long_options(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = _long_options(sub)
    return out


def _long_options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    )


_BASH = """\
# ledgerflux completion for bash: eval "$(ledgerflux completion bash)"
_ledgerflux() {
    local cur command i
    cur="${COMP_WORDS[COMP_CWORD]}"
    command=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -*) ;;
            *) command="${COMP_WORDS[i]}"; break ;;
        esac
    done
    if [[ -z "$command" ]]; then
        if [[ "$cur" == -* ]]; then
            COMPREPLY=($(compgen -W "%(global)s" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "%(commands)s" -- "$cur"))
        fi
        return
    fi
    if [[ "$cur" == -* ]]; then
        case "$command" in
%(cases)s
        esac
        return
    fi
    case "$command" in
        ctl)
            local dir="${LEDGERFLUX_DATA_DIR:-./.ledgerflux}" roles=""
            if [[ -d "$dir/run" ]]; then
                roles=$(cd "$dir/run" && ls *.sock 2>/dev/null | sed 's/\\.sock$//')
            fi
            COMPREPLY=($(compgen -W "resync $roles status drain reload" -- "$cur")) ;;
        completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")) ;;
        bench) COMPREPLY=($(compgen -W "%(benchmarks)s" -- "$cur")) ;;
        replay|up|record) COMPREPLY=($(compgen -f -- "$cur")) ;;
    esac
}
complete -F _ledgerflux ledgerflux
"""

_ZSH = """\
# ledgerflux completion for zsh: eval "$(ledgerflux completion zsh)"
autoload -U +X bashcompinit && bashcompinit
"""


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for *shell* (``bash`` or ``zsh``, which runs the bash one
    through ``bashcompinit``)."""
    from ledgerflux.cli import BENCHMARKS

    options = options_by_command(parser)
    global_options = options.pop("")
    cases = "\n".join(
        f'            {name}) COMPREPLY=($(compgen -W "{" ".join(opts)}" -- "$cur")) ;;'
        for name, opts in sorted(options.items())
    )
    bash = _BASH % {
        "global": " ".join(global_options),
        "commands": " ".join(sorted(options)),
        "cases": cases,
        "benchmarks": " ".join(BENCHMARKS),
    }
    if shell == "bash":
        return bash
    if shell == "zsh":
        return _ZSH + bash
    raise ValueError(f"unknown shell {shell!r}; expected bash or zsh")
