// MathJax 3 for the equations that pymdownx.arithmatex marks (class "arithmatex", delimiters
// \( \) and \[ \]). MathJax itself is served by the site (assets/mathjax/, copied from the
// django-static-mathjax package by docs/hooks.py), and so are its fonts and extensions.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};
