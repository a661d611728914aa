"""Instruction pools for speech tasks, in English and Chinese.

Stage 1 (ASR alignment) pairs every clip with an instruction drawn from a varied pool so that the
adaptor learns "audio -> its words" rather than one fixed prompt string (the SpeechGPT / LLaSM
recipe). The pools are data; :func:`asr_human_value` draws from them with a caller-owned RNG so a
job's output is reproducible from its seed.
"""

from __future__ import annotations

import random

SPEECH_TOKEN = "<speech>"

ASR_INSTRUCTIONS_EN: tuple[str, ...] = (
    "Transcribe the audio.",
    "Can you write down what was said?",
    "Please transcribe this speech into text.",
    "What does the speaker say?",
    "Write out the words spoken in this recording.",
    "Convert the speech to text.",
    "Give me a transcript of this audio clip.",
    "Listen to the audio and write down every word.",
    "Turn this recording into written text.",
    "What is being said in this clip?",
    "Produce a verbatim transcription of the audio.",
    "Repeat what the speaker said, word for word, in text.",
    "Transcribe the following speech.",
    "Could you transcribe this recording for me?",
    "Please write down the spoken content.",
    "Recognize the speech and output the text.",
    "Type out what you hear.",
    "What words are spoken here?",
    "Provide the exact text of this utterance.",
    "Write a transcript of the speech above.",
    "I need a transcription of this audio, please.",
    "Listen carefully and transcribe.",
    "Convert this spoken sentence into written form.",
    "Tell me exactly what the person says.",
    "Please give the text version of this recording.",
    "Transcribe this clip without adding anything.",
    "Write down the speech as accurately as you can.",
    "Perform speech recognition on this audio.",
    "What did the speaker just say? Write it down.",
    "Turn the spoken words into text.",
    "Can you tell me what is said in this recording?",
    "Transcribe the speaker's words.",
    "Output the transcription of the audio.",
    "Please jot down what was spoken.",
    "Write the spoken sentence in text form.",
    "Change this audio into a text transcript.",
    "Listen and write what you hear, word for word.",
    "Give the verbatim text of this speech.",
    "Please recognize and transcribe the utterance.",
    "What is the content of this speech? Give the exact words.",
    "Transcribe the recording into plain text.",
    "Could you write out this audio?",
    "Make a written record of what was said.",
    "Provide a word-for-word transcript.",
    "Decode the speech into text.",
    "Put the spoken words into writing.",
    "Write down exactly what you heard.",
    "Please transcribe the voice message.",
    "Render this speech as text.",
    "Type the words the speaker says.",
    "What sentence is spoken in the audio?",
    "Transcribe this audio snippet accurately.",
    "Can you transcribe what this person is saying?",
    "Generate the text transcript for this speech.",
    "Listen to this and transcribe it.",
    "Please convert the voice recording into text.",
    "Write what is said in this audio, nothing more.",
    "Transcribe the spoken English in this clip.",
    "Give me the exact words from this recording.",
    "Dictation: write down what you hear.",
    "Please provide a transcription.",
    "Show me the text of what was spoken.",
    "Transcribe it.",
    "What's said here? Transcribe it exactly.",
    "Help me transcribe this recording.",
)

ASR_INSTRUCTIONS_ZH: tuple[str, ...] = (
    "请把这段语音转写成文字。",
    "请转写这段音频。",
    "这段录音里说了什么？请写下来。",
    "请将语音内容转换为文本。",
    "把你听到的内容逐字写出来。",
    "请识别这段语音并输出文字。",
    "说话人说了什么？",
    "请给出这段音频的文字稿。",
    "将这段话转成文字。",
    "请听写这段语音。",
    "请把录音内容一字不差地写下来。",
    "这段音频的内容是什么？请用文字表示。",
    "帮我把这段语音转成文本。",
    "请对这段音频进行语音识别。",
    "把这句话写成文字。",
    "请记录下说话人说的每一个字。",
    "你能把这段话写下来吗？",
    "请输出这段语音的转写结果。",
    "听一听这段录音，然后写出它的内容。",
    "请将下面的语音转写为文字。",
    "这段话是怎么说的？请写出原文。",
    "请把音频中的话原样写出来。",
    "语音转文字：请转写。",
    "请准确地转写这段录音。",
    "麻烦把这段语音整理成文字。",
    "请写出你听到的句子。",
    "这段语音说的是什么内容？请逐字转写。",
    "把这段音频变成文字。",
    "请识别语音中的文字内容。",
    "你听到了什么？请写下来。",
    "请对以下录音做逐字转写。",
    "请将这句话的语音转写成汉字。",
    "帮我听写一下这段话。",
    "请给出这段话的文本。",
    "这段录音说了什么？只需写出原话。",
    "请将说话内容转录成文字。",
    "把语音里的每个字都写出来。",
    "请转录这段音频。",
    "能帮我把这段录音转成文字吗？",
    "请写下这段语音对应的文字。",
    "语音识别：请输出文字结果。",
    "请认真听这段话，并把它写下来。",
    "把说话人的话逐字记录下来。",
    "请把这段声音里的内容用文字表达出来。",
    "请听这段录音并转写。",
    "这句话怎么写？请写出来。",
    "请给出音频的逐字稿。",
    "请把听到的话完整地写出来，不要添加其他内容。",
    "这段语音的文字内容是什么？",
    "请把这段中文语音转写出来。",
    "帮我记录这段语音说了什么。",
    "请把这段录音变成文字稿。",
    "转写一下这段话。",
    "请将音频内容原文写出。",
    "你能听出这段话说了什么吗？请写下来。",
    "请输出语音对应的文本内容。",
    "请把这条语音消息转成文字。",
    "把这段话的原文写给我。",
    "请对这段语音进行听写。",
    "听完这段录音后，请写出其中的话。",
    "请精确转写这段音频，不要遗漏。",
    "这段话说的是什么？请用文字回答原话。",
    "请把这段讲话记录成文字。",
    "识别一下这段语音。",
    "请帮我把这段口述内容写成文字。",
)

ASR_INSTRUCTIONS: dict[str, tuple[str, ...]] = {"en": ASR_INSTRUCTIONS_EN, "zh": ASR_INSTRUCTIONS_ZH}


def asr_instruction(rng: random.Random, lang: str) -> str:
    """One ASR instruction in ``lang`` (``en``/``zh``; anything else falls back to English)."""
    return rng.choice(ASR_INSTRUCTIONS.get(lang, ASR_INSTRUCTIONS_EN))


def asr_human_value(rng: random.Random, lang: str) -> str:
    """The human turn of an ASR item: ``<speech>`` and an instruction, the speech randomly first or last."""
    instruction = asr_instruction(rng, lang)
    if rng.random() < 0.5:
        return f"{SPEECH_TOKEN}\n{instruction}"
    return f"{instruction}\n{SPEECH_TOKEN}"
