"""`facilitair completion bash|zsh`: a completion script made from the parser itself, so it never lags behind.

    source <(facilitair completion bash)      # in ~/.bashrc
    source <(facilitair completion zsh)       # in ~/.zshrc (zsh runs the bash function through bashcompinit)

Commands, each command's flags, and the values of flags with a fixed set complete; paths fall back to the
shell's file completion.
"""

from __future__ import annotations

import argparse
import shlex


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def bash_script(parser: argparse.ArgumentParser) -> str:
    """The bash completion function for `parser`'s program."""
    prog = parser.prog
    commands = _subcommands(parser)
    top = [o for a in parser._actions for o in a.option_strings]
    value_cases, option_cases, positional_cases = [], [], []
    for name, sub in commands.items():
        flags = [o for a in sub._actions for o in a.option_strings]
        option_cases.append(f"        {name}) opts={shlex.quote(' '.join(flags))} ;;")
        for action in sub._actions:
            if action.choices and action.option_strings:
                pattern = "|".join(f'"{name} {o}"' for o in action.option_strings)
                words = shlex.quote(" ".join(str(c) for c in action.choices))
                value_cases.append(f'        {pattern}) COMPREPLY=($(compgen -W {words} -- "$cur")); return ;;')
            elif action.choices and not action.option_strings:
                words = shlex.quote(" ".join(str(c) for c in action.choices))
                positional_cases.append(f'        {name}) COMPREPLY=($(compgen -W {words} -- "$cur")); return ;;')
    function = f"_{prog.replace('-', '_')}"
    return "\n".join(
        [
            f"# {prog} completion for bash: source <({prog} completion bash)",
            f"{function}() {{",
            '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
            '    local cmd="${COMP_WORDS[1]}" opts=""',
            '    if [ "$COMP_CWORD" -eq 1 ]; then',
            f'        COMPREPLY=($(compgen -W {shlex.quote(" ".join([*commands, *top]))} -- "$cur")); return',
            "    fi",
            '    case "$cmd $prev" in',
            *value_cases,
            "    esac",
            '    case "$cmd" in',
            *option_cases,
            "    esac",
            '    if [[ "$cur" == -* ]]; then',
            '        COMPREPLY=($(compgen -W "$opts" -- "$cur")); return',
            "    fi",
            '    case "$cmd" in',
            *positional_cases,
            "    esac",
            "}",
            f"complete -o default -F {function} {prog}",
            "",
        ]
    )


def zsh_script(parser: argparse.ArgumentParser) -> str:
    """The same function for zsh, through its bash compatibility."""
    prog = parser.prog
    return (
        f"# {prog} completion for zsh: source <({prog} completion zsh)\n"
        "autoload -U +X compinit && compinit\nautoload -U +X bashcompinit && bashcompinit\n" + bash_script(parser)
    )
