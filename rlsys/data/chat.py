"""How a dataset row becomes the token ids the policy sees: chat template or raw text, special tokens once.

One :class:`PromptFormat` per tokenizer, built from ``task.prompt_format``, ``task.system_prompt`` and
``task.prompt_template``, is used everywhere a prompt is encoded — the load-time token checks, the warm-up, the
rollout workers and ``rlsys eval`` — so the length a check counted is the length that is generated from.

* ``chat``: the conversation (a ``prompt`` row is one user turn; ``system_prompt`` is prepended as a system turn
  unless the row has its own) is rendered with the tokenizer's chat template and ``add_generation_prompt=True``, and
  the rendering is encoded with ``add_special_tokens=False``: the template writes every special token it wants
  (a BOS among them, or none), and adding the tokenizer's own on top would double them (as transformers'
  ``apply_chat_template(tokenize=True)`` also avoids).
* ``raw``: the text is encoded as it is, with the tokenizer's usual special tokens — unless it already starts with
  the BOS token's text (a prompt formatted upstream), which then is not added a second time. A conversation row
  cannot be raw: there is no agreed way to write turns as plain text.
* ``auto`` (the default): ``chat`` when the tokenizer has a chat template, else ``raw``.

In a multi-turn trajectory (:mod:`rlsys.agent_loop`) an environment's observation follows the policy's action as
the template writes a turn of ``observation_role`` (``tool``): :meth:`PromptFormat.observation_ids` is the text the
template puts between an assistant turn's content and the next assistant turn's first token — the end of the
assistant turn, the tool turn, the next generation prompt — less what the policy already wrote (its end token);
raw prompts get the observation's text as it is. A first observation (from ``reset``) is a user turn after the
prompt's (raw: its text after the prompt's).

``prompt_template`` (with ``{prompt}`` in it) wraps a ``prompt`` row's text, or the last user turn of a
conversation, before either: e.g. ``"{prompt}\\nPut the final answer after ####."``.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from rlsys.config import ConfigError, TaskConfig
from rlsys.types import Prompt

PLACEHOLDER = "{prompt}"
_ACTION = "RLSYS-ACTION-7f3a"  # stands for the policy's action when the template renders the turns around it


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class PromptFormat:
    """``render(prompt)`` is the text the policy reads and ``encode(prompt)`` its token ids [P] (a list of ints)."""

    tokenizer: PreTrainedTokenizerBase
    chat: bool  # resolved from task.prompt_format
    system_prompt: str | None = None
    template: str | None = None

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase, task: TaskConfig, what: str = "the policy") -> PromptFormat:
        """The format ``task`` asks for with this tokenizer. Raises :class:`ConfigError` for ``chat`` with a
        tokenizer that has no chat template, and for a system prompt that would have to be raw text.
        ``what`` names the checkpoint in the error."""
        mode = task.prompt_format  # one of auto, chat, raw (rlsys.config.validate)
        templated = has_chat_template(tokenizer)
        if mode == "chat" and not templated:
            raise ConfigError(f"task.prompt_format=chat, but the tokenizer of {what} has no chat template; use "
                              "task.prompt_format=raw, or a checkpoint whose tokenizer has one")
        chat = mode == "chat" or (mode == "auto" and templated)
        if task.system_prompt and not chat:
            raise ConfigError(f"task.system_prompt is set, but prompts are raw text (task.prompt_format={mode}"
                              f"{', and the tokenizer of ' + what + ' has no chat template' if mode == 'auto' else ''})"
                              ": a system turn needs a chat template; put the instruction into task.prompt_template")
        return cls(tokenizer, chat, task.system_prompt or None, task.prompt_template or None)

    @classmethod
    def raw(cls, tokenizer: PreTrainedTokenizerBase) -> PromptFormat:
        """Prompts encoded as the text they are (no template, no system prompt)."""
        return cls(tokenizer, chat=False)

    def messages(self, prompt: Prompt) -> list[dict[str, str]]:
        """The conversation the chat template renders: the row's turns (or one user turn), the system prompt first
        when the row has no system turn, ``prompt_template`` applied to the last user turn."""
        turns = [{"role": r, "content": c} for r, c in prompt.messages] or [{"role": "user", "content": prompt.text}]
        last_user = max(i for i, t in enumerate(turns) if t["role"] == "user")
        turns[last_user] = {"role": "user", "content": self._wrap(turns[last_user]["content"])}
        if self.system_prompt and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns

    def render(self, prompt: Prompt, first_observation: str | None = None) -> str:
        if self.chat:
            turns = self.messages(prompt)
            if first_observation is not None:
                turns.append({"role": "user", "content": first_observation})
            return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        if prompt.messages:
            raise ConfigError(f"prompt {prompt.prompt_id!r} is a conversation, but prompts are raw text (no chat "
                              "template): a conversation needs task.prompt_format=chat and a tokenizer with a template")
        return self._wrap(prompt.text) + (first_observation or "")

    def observation_ids(self, prompt: Prompt, observation: str, role: str = "tool", written: str = "") -> list[int]:
        """The token ids [O] that follow a policy action for the environment's ``observation`` (see the module's
        docstring); ``written``: the text of the tokens that ended the action (e.g. "<|im_end|>"), left out where
        the template would write it again. Raises :class:`ConfigError` if the chat template cannot render a turn
        of ``role`` after an assistant turn."""
        if not self.chat:
            return self.tokenizer(observation, add_special_tokens=False)["input_ids"]
        turns = [*self.messages(prompt), {"role": "assistant", "content": _ACTION},
                 {"role": role, "content": observation}]
        try:
            text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja2's TemplateError, or a template's raise_exception() on an unknown role
            raise ConfigError(f"the chat template cannot render an observation as a {role!r} turn after the "
                              f"policy's ({type(e).__name__}: {e}); set env.observation_role to a role it has") from e
        if text.count(_ACTION) != 1:
            raise ConfigError("the chat template does not write an assistant turn's content as it is, so an "
                              "observation cannot be placed after the policy's tokens")
        between = text.split(_ACTION, 1)[1]
        if written and between.startswith(written):
            between = between[len(written):]
        return self.tokenizer(between, add_special_tokens=False)["input_ids"]

    def encode(self, prompt: Prompt) -> list[int]:
        return self.encode_text(self.render(prompt))

    def encode_text(self, text: str) -> list[int]:
        """The ids of an already rendered prompt (:meth:`render`)."""
        return self.tokenizer(text, add_special_tokens=self._adds_special_tokens(text))["input_ids"]

    def _adds_special_tokens(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        return not self.chat and not (bos and text.startswith(bos))

    def _wrap(self, text: str) -> str:
        # str.replace, not str.format: prompts hold braces (LaTeX, code, JSON)
        return self.template.replace(PLACEHOLDER, text) if self.template else text
