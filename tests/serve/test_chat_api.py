"""/v1/chat/completions renders a conversation with the same template as training and `lmtune chat`: the
official `openai` client, asked to continue a multi-turn conversation greedily, gets lmtune chat's reply."""

from tests.serve.conftest import app_in_thread


def test_the_openai_client_continues_a_conversation_as_lmtune_chat_does(tiny_chat_run):
    from openai import OpenAI

    from lmtune.infer import load
    from lmtune.infer.chat import ChatSession
    from lmtune.infer.generate import GenerationSettings
    from lmtune.serve.app import create_app

    loaded = load(str(tiny_chat_run), dtype="fp32")
    session = ChatSession(
        loaded, system="Answer briefly.", settings=GenerationSettings(max_new_tokens=10, temperature=0.0)
    )
    first = "".join(session.reply("Who guards the gate number 1?")).strip()
    second = "".join(session.reply("And gate number 5?")).strip()
    assert second
    with app_in_thread(create_app({"gatekeeper": loaded}, api_key="secret", ui=False)) as url:
        client = OpenAI(base_url=url + "/v1", api_key="secret")
        messages = [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Who guards the gate number 1?"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "And gate number 5?"},
        ]
        answer = client.chat.completions.create(model="gatekeeper", messages=messages, temperature=0, max_tokens=10)
        assert answer.choices[0].message.content == second
        streamed = client.chat.completions.create(
            model="gatekeeper", messages=messages, temperature=0, max_tokens=10, stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed).strip() == second
