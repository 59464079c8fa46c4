"""`facilitair completion bash|zsh|fish`: a completion script made from the parser itself, so it never lags behind.

    source <(facilitair completion bash)      # in ~/.bashrc
    source <(facilitair completion zsh)       # in ~/.zshrc, after compinit
    facilitair completion fish | source       # in ~/.config/fish/config.fish

Every command and subcommand (`config show`, `models pull`), each one's flags, the values of flags with a fixed
set, and file names where a flag or argument takes a path; nothing where it takes anything else (a run id, a
model, a number), so `config <TAB>` offers `show`, not the files of the current folder. The three scripts are
written from one walk of the parser: the shell only finds which command the words so far name, then looks up
what that command offers.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# Metavars that say a value is a path (the server's flags are made by pydantic-settings, with no argparse type).
_PATH_METAVARS = ("FILE", "DIR", "PATH")


@dataclass
class _Command:
    """What one command (or subcommand) offers."""

    name: str  # "" for the program itself, "config show" for a subcommand
    subcommands: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    choices: dict[str, list[str]] = field(default_factory=dict)  # a flag's fixed values
    path_flags: list[str] = field(default_factory=list)  # flags whose value is a file or folder
    other_flags: list[str] = field(default_factory=list)  # flags whose value is anything else
    positional_choices: list[str] = field(default_factory=list)
    positional_path: bool = False


def _choices(action: argparse.Action) -> list[str]:
    """A flag's fixed values: argparse's choices, or those pydantic-settings lists in the metavar ({a,b})."""
    if action.choices:
        return [str(c) for c in action.choices]
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    return metavar[1:-1].split(",") if metavar.startswith("{") and metavar.endswith("}") else []


def _takes_path(action: argparse.Action) -> bool:
    return action.type is Path or action.metavar in _PATH_METAVARS or action.dest.endswith(("_dir", "_file"))


def _walk(parser: argparse.ArgumentParser, name: str = "") -> list[_Command]:
    """The command `parser` is, then every command below it."""
    command = _Command(name)
    below: list[_Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                command.subcommands.append(sub_name)
                below += _walk(sub, f"{name} {sub_name}".strip())
        elif action.option_strings:
            if action.help == argparse.SUPPRESS:
                continue
            command.flags += action.option_strings
            if action.nargs == 0:
                continue
            if _choices(action):
                command.choices.update({o: _choices(action) for o in action.option_strings})
            elif _takes_path(action):
                command.path_flags += action.option_strings
            else:
                command.other_flags += action.option_strings
        elif action.choices:
            command.positional_choices += [str(c) for c in action.choices]
        elif _takes_path(action):
            command.positional_path = True
    return [command, *below]


def _words(items: list[str]) -> str:
    return shlex.quote(" ".join(items))


def _steps(commands: list[_Command]) -> str:
    """Case patterns "PARENT:WORD" for each word that enters a subcommand."""
    steps = [f"{c.name}:{sub}" for c in commands for sub in c.subcommands]
    return "|".join(shlex.quote(s) for s in steps)


def _pattern(command: _Command, flags: list[str]) -> str:
    return "|".join(shlex.quote(f"{command.name}|{flag}") for flag in flags)


def _shell_function(commands: list[_Command], zsh: bool) -> list[str]:
    """The body both bash and zsh run: find the command, then offer what it has (zsh: compadd and _files)."""

    def offer(words: list[str]) -> str:
        if zsh:
            return f"compadd -- {' '.join(shlex.quote(w) for w in words)}"
        return f'COMPREPLY=($(compgen -W {_words(words)} -- "$cur"))'

    files = "_files" if zsh else 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur"))'
    first = 2 if zsh else 1  # zsh's $words starts at 1 with the program's name
    lines = [
        f'    local cur="{"${words[CURRENT]}" if zsh else "${COMP_WORDS[COMP_CWORD]}"}"',
        f'    local prev="{"${words[CURRENT-1]}" if zsh else "${COMP_WORDS[COMP_CWORD-1]}"}" cmd="" w i',
        f"    for ((i = {first}; i < {'CURRENT' if zsh else 'COMP_CWORD'}; i++)); do",
        f'        w="{"${words[i]}" if zsh else "${COMP_WORDS[i]}"}"',
        '        case "$cmd:$w" in',
        f'            {_steps(commands)}) cmd="${{cmd:+$cmd }}$w" ;;',
        "        esac",
        "    done",
        '    case "$cmd|$prev" in',
    ]
    for c in commands:
        lines += [f"        {_pattern(c, [flag])}) {offer(values)}; return ;;" for flag, values in c.choices.items()]
        if c.path_flags:
            lines.append(f"        {_pattern(c, c.path_flags)}) {files}; return ;;")
        if c.other_flags:
            lines.append(f"        {_pattern(c, c.other_flags)}) return ;;")
    lines += ["    esac", '    if [[ "$cur" == -* ]]; then', '        case "$cmd" in']
    lines += [f"            {shlex.quote(c.name)}) {offer(c.flags)} ;;" for c in commands if c.flags]
    lines += ["        esac", "        return", "    fi", '    case "$cmd" in']
    for c in commands:
        if c.subcommands or c.positional_choices:
            lines.append(f"        {shlex.quote(c.name)}) {offer(c.subcommands + c.positional_choices)} ;;")
        elif c.positional_path:
            lines.append(f"        {shlex.quote(c.name)}) {files} ;;")
    return [*lines, "    esac"]


def bash_script(parser: argparse.ArgumentParser) -> str:
    """The bash completion function for `parser`'s program."""
    prog = parser.prog
    function = f"_{prog.replace('-', '_')}"
    return "\n".join(
        [
            f"# {prog} completion for bash: source <({prog} completion bash)",
            f"{function}() {{",
            *_shell_function(_walk(parser), zsh=False),
            "}",
            f"complete -F {function} {prog}",
            "",
        ]
    )


def zsh_script(parser: argparse.ArgumentParser) -> str:
    """A native zsh completion function (compadd, _files) for `parser`'s program."""
    prog = parser.prog
    function = f"_{prog.replace('-', '_')}"
    return "\n".join(
        [
            f"#compdef {prog}",
            f"# {prog} completion for zsh: source <({prog} completion zsh)",
            f"{function}() {{",
            *_shell_function(_walk(parser), zsh=True),
            "}",
            "(( $+functions[compdef] )) || { autoload -U compinit && compinit }",
            f"compdef {function} {prog}",
            "",
        ]
    )


def _fish_option(flag: str) -> str:
    return f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}"


def fish_script(parser: argparse.ArgumentParser) -> str:
    """fish completions for `parser`'s program: one `complete` line per offer, under the command it belongs to."""
    prog = parser.prog
    commands = _walk(parser)
    steps = " ".join(shlex.quote(f"{c.name}:{sub}") for c in commands for sub in c.subcommands)
    lines = [
        f"# {prog} completion for fish: {prog} completion fish | source",
        f"function __{prog}_command --description 'the {prog} command the words so far name'",
        '    set -l cmd ""',
        "    for w in (commandline -opc)[2..-1]",
        '        switch "$cmd:$w"',
        f"            case {steps}",
        '                set cmd (string trim -- "$cmd $w")',
        "        end",
        "    end",
        "    printf '%s' $cmd",
        "end",
        f"function __{prog}_at --description 'true when the words so far name this command'",
        f"    set -l cmd (__{prog}_command)",
        '    test "$cmd" = "$argv[1]"',
        "end",
        f"complete -c {prog} -f",
    ]
    for c in commands:
        at = f"complete -c {prog} -n {shlex.quote(f'__{prog}_at {shlex.quote(c.name)}')}"
        if c.subcommands or c.positional_choices:
            lines.append(f"{at} -a {_words(c.subcommands + c.positional_choices)}")
        elif c.positional_path:
            lines.append(f"{at} -F")
        for flag in c.flags:
            if flag in c.choices:
                lines.append(f"{at} {_fish_option(flag)} -x -a {_words(c.choices[flag])}")
            elif flag in c.path_flags:
                lines.append(f"{at} {_fish_option(flag)} -r -F")
            elif flag in c.other_flags:
                lines.append(f"{at} {_fish_option(flag)} -x")
            else:
                lines.append(f"{at} {_fish_option(flag)}")
    return "\n".join([*lines, ""])


SCRIPTS = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}
