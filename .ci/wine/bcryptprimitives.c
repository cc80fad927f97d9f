/* Wine 8.0 (Debian 12's) has no bcryptprimitives.dll, whose ProcessPrng
 * Rust's standard library takes its random bytes from on Windows since
 * Rust 1.78; Windows 10 and later have it. For CI only: this stand-in gives
 * Wine one, on top of RtlGenRandom (advapi32's SystemFunction036), which
 * Wine has. It is never shipped: Windows brings its own. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG part = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, part))
            return FALSE;
        data += part;
        length -= part;
    }
    return TRUE;
}
