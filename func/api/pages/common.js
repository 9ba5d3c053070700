"use strict";
// What the script of every page uses: func/api/pages.py puts this in a script element of
// its own at the page's marker (pages.COMMON), before the page's own script.
const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  // a style goes through the CSSOM: the page's Content-Security-Policy refuses style attributes
  Object.entries(attrs || {}).forEach(([k, v]) => (k === "style" ? (node.style.cssText = v) : node.setAttribute(k, v)));
  if (text !== undefined) node.textContent = text;
  return node;
}
