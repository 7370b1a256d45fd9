// What both pages share: the API base, the token header, messages, calls, images that need the token.
"use strict";
const api = "/api/v1";
const $ = (id) => document.getElementById(id);

function headers() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// With a token, image URLs need it too: <img src> cannot send a header, so fetch and show a blob.
async function authorizedSrc(url) {
  const auth = headers();
  if (!auth.Authorization) return url;
  const response = await fetch(url, { headers: auth });
  return response.ok ? URL.createObjectURL(await response.blob()) : "";
}

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

async function call(path, options = {}) {
  const response = await fetch(api + path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const body = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.error ? `${body.error.message} (${body.error.code})` : `HTTP ${response.status}`);
  }
  return body;
}
