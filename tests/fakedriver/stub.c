/* Any other driver library of the fake host (utility, graphics, 32-bit): a shared object with a
 * SONAME and one symbol, enough for ldconfig to list it and a loader to load it. */
int fake_driver_stub(void) { return 0; }
