// Talking to the server: the model's name and settings (/v1/models, /props) and streamed chat completions.
"use strict";

import { state } from "./store.js";

export function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.settings.apiKey) h.Authorization = `Bearer ${state.settings.apiKey}`;
  return h;
}

export async function errorText(response) {
  try {
    const body = await response.json();
    return body.error?.message || `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// GET a JSON resource: {status, body} (body null unless the answer was 200).
export async function getJson(path) {
  const response = await fetch(path, { headers: headers() });
  return { status: response.status, body: response.ok ? await response.json() : null };
}

// The data of each server-sent event of a response, parsed, until [DONE].
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        if (line === "data: [DONE]") return;
        yield JSON.parse(line.slice(6));
      }
    }
  }
}

// Streams a chat completion: `onDelta(text)` for each piece of content (one per token from this server).
// Returns the server's usage and timings, when it sent them; throws its error, or an AbortError on `signal`.
export async function streamChat(request, signal, onDelta) {
  const response = await fetch("v1/chat/completions", {
    method: "POST", headers: headers(), signal,
    body: JSON.stringify({ ...request, stream: true, stream_options: { include_usage: true } }),
  });
  if (!response.ok) throw new Error(await errorText(response));
  let usage = null;
  let timings = null;
  for await (const chunk of events(response)) {
    if (chunk.error) throw new Error(chunk.error.message);
    if (chunk.usage) usage = chunk.usage;
    if (chunk.timings) timings = chunk.timings;
    const delta = chunk.choices?.[0]?.delta?.content;
    if (delta) onDelta(delta);
  }
  return { usage, timings };
}
