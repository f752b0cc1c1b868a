/* tools/pinsctl/pinsctl.c: pinsctl's main (the commands are in pinsctl_core: tools/pinsctl/cli.c
 * dispatches them). */
#include "cli.h"

int main(int argc, char **argv)
{
    return pinsctl_main(argc, argv);
}
