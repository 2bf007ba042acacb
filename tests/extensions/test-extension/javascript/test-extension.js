// test-extension: marks the page so browser tests can see extension scripts are injected
window.testExtensionLoaded = true;
