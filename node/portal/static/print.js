// The licence page's 打印 button: the browser's own print dialog (the print stylesheet keeps the licence only).
document.querySelectorAll("[data-print]").forEach(function (button) {
  button.addEventListener("click", function () { window.print(); });
});
